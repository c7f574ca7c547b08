"""Training where the compute is: devices, the official student schedules, streamed images,
data-parallel Ray Train workers, and where the manifest says training ran."""

import math
import os

import numpy as np
import pytest
import torch
from experiments import experiment_of
from PIL import Image

import raysvc.learners.kd  # noqa: F401  (registers the KD learners)
from raysvc.datasets.base import array_dataset
from raysvc.errors import ConfigError
from raysvc.learners import LocalRunner, make_learner
from raysvc.learners.coop import CoOpLearner, CoOpOptions, train_coop
from raysvc.learners.devices import Workers, training_device, worker_group
from raysvc.learners.kd import KDOptions, StudentSource, fit_clap, train_student
from raysvc.learners.schedules import (
    cosine,
    imagenet_schedule,
    official_schedule,
    official_steps,
    padded,
    shard,
)
from raysvc.learners.students import StudentImages, centre_square, crop_box
from raysvc.registry import LEARNERS
from raysvc.service.scaling import RayTrainOptions
from raysvc.service.train import RayTrainRunner
from raysvc.spec import RunSpec

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def noise():
    """12 random 32-px RGB images in 3 classes: pool 0-9, test 10-11."""
    rng = np.random.default_rng(0)
    dataset = array_dataset("noise", rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8), np.arange(12) % 3,
                            ("a", "b", "c"))
    return StudentSource(dataset, np.arange(10), np.arange(10, 12))


def _payload(source, **options):
    rng = np.random.default_rng(1)
    opts = KDOptions(**{"image_size": 32, "student_weights": "random", "repeat": 1, "batch_size": 4, **options})
    return {"options": opts, "n_classes": 3, "images": source, "labeled": np.array([0, 1, 2]),
            "labels": np.array([0, 1, 2]), "teacher_logits": rng.standard_normal((10, 3)).astype(np.float32),
            "seed": 0, "epochs": opts.epochs_of_fit(0)}


# ------------------------------------------------------------------ the official schedule
def _official_loader_steps(n_labeled: int, batch_size: int = 64, repeat: int = 200) -> int:
    """train_active_others.py:182-208 with datasets/utils.py:375-409, transcribed: the labeled
    loader's dataset is padded to whole batches, then sampled 200 times its length with replacement."""
    from torch.utils.data import DataLoader, RandomSampler

    source = list(range(n_labeled))
    target = (len(source) + batch_size - 1) // batch_size * batch_size
    dataset = source + [source[i % len(source)] for i in range(target - len(source))]
    loader = DataLoader(dataset, batch_size=batch_size,
                        sampler=RandomSampler(dataset, replacement=True, num_samples=len(dataset) * repeat))
    return len(loader)


@pytest.mark.parametrize("n_labeled", [1, 10, 64, 65, 200])
def test_official_step_count_is_200_per_padded_batch_of_the_labeled_set(n_labeled):
    """10 labeled images: 200 steps, not ceil(200 x 10 / 64) = 32: the repeated loader samples
    200 x the *padded* labeled set (64 rows)."""
    expected = {1: 200, 10: 200, 64: 200, 65: 400, 200: 800}[n_labeled]
    assert official_steps(n_labeled) == expected == _official_loader_steps(n_labeled)
    schedule = official_schedule(np.arange(n_labeled), np.arange(100, 300), repeat=200, batch_size=64, distil=True,
                                 rng=np.random.default_rng(0))
    assert schedule.steps == expected and sum(1 for _ in schedule.batches()) == expected


def test_official_batches_are_separate_labeled_and_unlabeled_draws():
    """Labeled [10, 11, 12] in batches of 4 pads to [10, 11, 12, 10]: draws with replacement from
    it give 10 half the time; unlabeled 0-4 pads to 8 rows, and every two batches are one pass
    over them in a fresh order."""
    assert padded(np.array([10, 11, 12]), 4).tolist() == [10, 11, 12, 10]
    assert padded(np.arange(5), 4).tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    schedule = official_schedule(np.array([10, 11, 12]), np.arange(5), repeat=4000, batch_size=4, distil=True,
                                 rng=np.random.default_rng(0))
    batches = list(schedule.batches())
    assert schedule.steps == len(batches) == 4000 and not schedule.stacked
    assert all(len(lab) == 4 and len(unl) == 4 for lab, unl in batches)
    drawn = np.concatenate([lab for lab, _ in batches])
    assert set(drawn.tolist()) == {10, 11, 12}
    assert (drawn == 10).mean() == pytest.approx(0.5, abs=0.015)  # with replacement, from the padded set
    assert (drawn == 11).mean() == pytest.approx(0.25, abs=0.015)
    for first in range(0, 8, 2):
        one_pass = np.concatenate([batches[first][1], batches[first + 1][1]])
        assert sorted(one_pass.tolist()) == [0, 0, 1, 1, 2, 2, 3, 4]
    assert not np.array_equal(batches[0][1], batches[2][1])  # reshuffled every pass
    no_teacher = official_schedule(np.array([10, 11, 12]), np.arange(5), repeat=2, batch_size=4, distil=False,
                                   rng=np.random.default_rng(0))
    assert all(len(unl) == 0 for _, unl in no_teacher.batches())


def test_official_learning_rate_warms_up_over_a_tenth_then_decays_linearly():
    """20 steps: 2 of warm-up (0, 0.5), then (20 - s) / 18; the same curve as the official
    AdamW + transformers.get_linear_schedule_with_warmup(0.1 * steps, steps)."""
    from raysvc._compat import import_torchvision

    import_torchvision()
    from transformers import get_linear_schedule_with_warmup

    factor = official_schedule(np.arange(3), np.arange(1000), repeat=20, batch_size=64, distil=True,
                               rng=np.random.default_rng(0)).lr_factor
    assert official_steps(3, repeat=20) == 20
    assert [factor(s) for s in (0, 1, 2, 3, 11, 19, 20)] == pytest.approx(
        [0.0, 0.5, 1.0, 17 / 18, 9 / 18, 1 / 18, 0.0])
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    official = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0.1 * 20, num_training_steps=20)
    for step in range(20):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * factor(step), abs=1e-12)
        optimizer.step()
        official.step()
    assert optimizer.param_groups[0]["weight_decay"] == KDOptions().weight_decay == 0.01  # AdamW's default


def test_imagenet_schedule_runs_epochs_over_the_unlabeled_set_with_the_labeled_set_repeated():
    """|U| = 5, |L| = 2, global batch 2, 2 epochs: 3 steps per epoch (2, 2, 1 rows); each epoch
    reads every unlabeled row once, and the labeled set repeated to 5 rows ([7, 8, 7, 8, 7])."""
    schedule = imagenet_schedule(np.array([7, 8]), np.arange(5), epochs=2, batch_size=2, distil=True,
                                 rng=np.random.default_rng(0))
    batches = list(schedule.batches())
    assert schedule.steps == len(batches) == 6 and schedule.stacked
    assert [len(u) for _, u in batches] == [2, 2, 1] * 2 == [len(lab) for lab, _ in batches]
    for epoch in (batches[:3], batches[3:]):
        assert sorted(np.concatenate([u for _, u in epoch]).tolist()) == [0, 1, 2, 3, 4]
        assert sorted(np.concatenate([lab for lab, _ in epoch]).tolist()) == [7, 7, 7, 8, 8]
    assert [schedule.lr_factor(s) for s in (0, 3, 6)] == pytest.approx([1.0, 0.5, 0.0])
    assert cosine(4)(1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_variants_fill_the_official_settings_and_refuse_options_they_do_not_read():
    official = KDOptions()
    assert (official.variant, official.repeat, official.batch_size, official.lr, official.weight_decay) == (
        "official", 200, 64, 1e-3, 0.01)
    assert official.crop and official.beta == 1.0 and official.mixing_alpha("zeroshot") == 0.5
    imagenet = KDOptions(variant="imagenet")
    assert imagenet.epochs == (20, 20, 20, 20, 20, 20, 20, 50) and imagenet.batch_size == 256
    assert [imagenet.epochs_of_fit(i) for i in (0, 6, 7, 9)] == [20, 20, 50, 50]
    assert (imagenet.mixing_alpha("zeroshot"), imagenet.mixing_alpha("fewshot"), imagenet.beta) == (0.4, 0.2, 0.5)
    assert KDOptions(variant="imagenet", alpha=0.7).mixing_alpha("fewshot") == 0.7
    assert KDOptions(variant="pool-epochs").weight_decay == 1e-4
    part = LEARNERS.part("kd-zeroshot", {"variant": "imagenet", "epochs": [3, 5]})  # a JSON list from the CLI
    assert part.options.epochs == (3, 5) and part.options.epochs_of_fit(1) == 5
    with pytest.raises(ConfigError, match="option epochs: variant='official' does not read it") as info:
        LEARNERS.part("kd-zeroshot", {"epochs": 5})
    assert "\n" not in str(info.value) and "repeat x ceil(|L| / batch_size)" in str(info.value)
    with pytest.raises(ConfigError, match="option repeat: variant='imagenet'"):
        KDOptions(variant="imagenet", repeat=3)
    with pytest.raises(ConfigError, match="epochs"):
        KDOptions(variant="imagenet", epochs=())


# ------------------------------------------------------------------ data-parallel shards
def test_shard_gives_each_worker_half_of_every_global_batch():
    """Five rows over two workers: padded with the first row (DistributedSampler's way) to six,
    three each; together they cover the batch."""
    rows = np.array([10, 11, 12, 13, 14])
    halves = [shard(rows, Workers(rank, 2)) for rank in (0, 1)]
    assert [h.tolist() for h in halves] == [[10, 11, 12], [13, 14, 10]]
    assert shard(rows, Workers()).tolist() == rows.tolist()
    assert [shard(np.arange(64), Workers(r, 2)).tolist() for r in (0, 1)] == [list(range(32)), list(range(32, 64))]
    assert worker_group() == Workers(0, 1)  # outside Ray Train


# ------------------------------------------------------------------ streamed images
def test_images_decode_per_item_the_same_wherever_they_are_decoded(noise):
    images = StudentImages(noise.dataset, 48, flip=True, crop=True)
    first = images[(3, 12345)]
    assert first.dtype == torch.uint8 and first.shape == (3, 48, 48)
    assert torch.equal(first, images[(3, 12345)]) and not torch.equal(first, images[(3, 54321)])
    evaluation = images[(3, -1)]  # the evaluation transform: a square image is just resized
    expected = np.array(noise.dataset.load(3).resize((48, 48), Image.BICUBIC))
    assert np.array_equal(evaluation.permute(1, 2, 0).numpy(), expected)
    wide = Image.new("RGB", (100, 40))
    assert centre_square(wide, 20).size == (20, 20)


def test_random_resized_crop_falls_back_to_the_centre_crop_at_the_clamped_ratio():
    """100 x 10: no crop of half the area or more has an aspect ratio within [3/4, 4/3], so all
    ten draws fail and torchvision takes the centre 13 x 10 (ratio clamped to 4/3)."""
    assert crop_box(100, 10, np.random.default_rng(0)) == (43, 0, 13, 10)
    left, top, w, h = crop_box(64, 64, np.random.default_rng(0))
    assert 0.5 * 64 * 64 <= w * h * 1.1 and w <= 64 and h <= 64 and left + w <= 64 and top + h <= 64


def test_student_results_do_not_depend_on_the_decode_workers(noise):
    torch.set_num_threads(1)
    inline = train_student(_payload(noise, device="cpu", decode_workers=0))
    forked = train_student(_payload(noise, device="cpu", decode_workers=2))
    assert inline["steps"] == 1 and inline["images"] == [8]  # one step: 4 labeled + 4 unlabeled rows
    np.testing.assert_array_equal(inline["losses"], forked["losses"])
    np.testing.assert_array_equal(inline["pool"]["z_kd"], forked["pool"]["z_kd"])


# ------------------------------------------------------------------ devices
def test_training_device_is_explicit_and_cuda_is_refused_without_a_device():
    assert training_device("cpu") == torch.device("cpu")
    assert training_device("auto") == torch.device("cuda" if CUDA else "cpu")
    if not CUDA:
        with pytest.raises(ConfigError, match="device='cuda': torch sees no CUDA device") as info:
            training_device("cuda")
        assert "\n" not in str(info.value)


def test_student_trains_and_infers_on_the_device_it_is_given(noise):
    out = train_student(_payload(noise, device="cpu"))
    assert out["device"] == "cpu"
    assert all(isinstance(v, np.ndarray) for part in ("pool", "test") for v in out[part].values())
    assert out["pool"]["z_ce"].shape == (10, 3) and out["test"]["z_kd"].shape == (2, 3)
    if not CUDA:
        with pytest.raises(ConfigError, match="device='cuda'"):
            train_student(_payload(noise, device="cuda"))


def test_clap_fits_on_the_device_it_is_given():
    feats = np.eye(2, dtype=np.float32)
    anchor = np.array([[2.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    on_cpu = fit_clap(feats, np.array([0, 1]), anchor, 10.0, repeat=64, device=torch.device("cpu"))
    assert isinstance(on_cpu, np.ndarray) and on_cpu.shape == (2, 2) and not np.array_equal(on_cpu, anchor)
    np.testing.assert_array_equal(on_cpu, fit_clap(feats, np.array([0, 1]), anchor, 10.0, repeat=64))


@pytest.fixture(scope="module")
def small(feature_cache):
    return experiment_of(RunSpec(dataset="animal-mnist", per_class=6, test_fraction=0.25, rounds=1), feature_cache)


def test_coop_trains_and_predicts_on_the_device_it_is_given(small):
    exp = small
    payload = {"backbone": exp.backbone, "classnames": list(exp.dataset.classnames),
               "features": exp.encoded.image_features[exp.pool[:10]], "labels": exp.pool_labels[:10], "seed": 0,
               "text_features": exp.encoded.text_features}
    result = train_coop({**payload, "options": CoOpOptions(epochs=1, device="cpu")})
    assert result["device"] == "cpu" and result["steps"] == 1
    assert result["contexts"]["unified"].shape == (4, 384) and isinstance(result["contexts"]["unified"], np.ndarray)
    learner = make_learner("coop", exp, {"epochs": 1, "device": "cpu"})
    positions = np.arange(10)
    fit = learner.fit(positions, exp.pool_labels[positions], seed=0, runner=LocalRunner())
    assert fit["device"] == "cpu" and fit["steps"] == 1
    assert learner.predict_proba("test").shape == (len(exp.test), 10)
    if not CUDA:
        with pytest.raises(ConfigError, match="device='cuda'"):
            train_coop({**payload, "options": CoOpOptions(epochs=1, device="cuda")})


def test_fewshot_teacher_and_student_report_their_device(small):
    learner = make_learner("kd-fewshot", small, {"repeat": 1, "clap_repeat": 20, "image_size": 32, "device": "cpu"})
    positions = np.arange(0, len(small.pool), 3)
    fit = learner.fit(positions, small.pool_labels[positions], seed=0, runner=LocalRunner())
    assert fit["device"] == "cpu" and fit["workers"] == 1 and fit["steps"] == 1
    assert learner.get_state()["fits"] == 1  # the next fit takes the second entry of an epochs list
    if not CUDA:
        with pytest.raises(ConfigError, match="device='cuda'"):
            make_learner("kd-fewshot", small, {"device": "cuda"}).fit(
                positions, small.pool_labels[positions], seed=0, runner=LocalRunner())


# ------------------------------------------------------------------ where the manifest says it trained
def test_runner_placement_says_which_learners_train_on_one_worker():
    from raysvc.learners.kd import FewShotKDLearner, ZeroShotKDLearner

    two = RayTrainRunner(RayTrainOptions(num_workers=2))
    coop = two.placement(CoOpLearner)
    assert (coop["workers_asked"], coop["workers"]) == (2, 1) and "one worker" in coop["one_worker"]
    assert two.placement(ZeroShotKDLearner) == {"runner": "ray-train", "workers_asked": 2, "workers": 2}
    assert "CLAP" in two.placement(FewShotKDLearner)["one_worker"]
    assert "one_worker" not in RayTrainRunner(RayTrainOptions(num_workers=1)).placement(CoOpLearner)
    assert two.scaling_config(data_parallel=False).num_workers == 1 and two.scaling_config().num_workers == 2
    assert LocalRunner().placement(CoOpLearner) == {"runner": "local", "workers": 1}


def test_the_manifest_records_where_training_ran(small, feature_cache):
    from experiments import cache_at

    from raysvc.run import execute

    spec = RunSpec(dataset="animal-mnist", per_class=6, test_fraction=0.25, rounds=1, learner_params={"epochs": 1})
    result = execute(spec.resolve(), encode=cache_at(feature_cache).encode)
    assert result.manifest["training"] == {"runner": "local", "workers": 1}


# ------------------------------------------------------------------ data-parallel Ray Train workers
@pytest.fixture(scope="module")
def emoji(feature_cache):
    return experiment_of(RunSpec(dataset="emoji"), feature_cache)


@pytest.mark.timeout(900)
def test_two_ray_train_workers_share_each_global_batch_and_train_as_one(emoji):
    """DDP over two gloo CPU workers: each worker trains on half of every global batch of the
    same schedule (same steps), the gathered pool and test outputs cover every image, and the
    student's test accuracy is that of one worker within seed noise (0.08 here: the spread of
    single-worker seeds on this set, bench/results/train_*.md)."""
    from local_ray import local_ray

    exp = emoji
    labeled = np.concatenate([np.flatnonzero(exp.pool_labels == c)[:2] for c in range(exp.dataset.n_classes)])
    payload = {"options": KDOptions(repeat=6, image_size=64, device="cpu"), "n_classes": exp.dataset.n_classes,
               "images": StudentSource(exp.dataset, exp.pool, exp.test), "labeled": labeled,
               "labels": exp.pool_labels[labeled], "teacher_logits": exp.encoded.zeroshot_logits(exp.pool),
               "seed": 0, "epochs": 0}
    outs = {}
    with local_ray({"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}):
        for n in (1, 2):
            runner = RayTrainRunner(RayTrainOptions(num_workers=n))
            try:
                outs[n] = runner.run(train_student, payload, data_parallel=True)
            finally:
                runner.close()
    one, two = outs[1], outs[2]
    assert one["steps"] == two["steps"] == 6 and (one["workers"], two["workers"]) == (1, 2)
    assert one["images"] == [6 * 128] and two["images"] == [6 * 64, 6 * 64]  # 64 labeled + 64 unlabeled a step
    assert two["pool"]["h"].shape == one["pool"]["h"].shape == (len(exp.pool), 1280)
    assert two["test"]["z_ce"].shape == (len(exp.test), exp.dataset.n_classes)
    accuracy = {n: float((out["test"]["z_ce"].argmax(1) == exp.test_labels).mean()) for n, out in outs.items()}
    assert accuracy[1] > 2 / exp.dataset.n_classes and abs(accuracy[2] - accuracy[1]) <= 0.08, accuracy
